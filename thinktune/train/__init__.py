"""Training recipes (one readable file each) and the shared engine pieces they compose."""
