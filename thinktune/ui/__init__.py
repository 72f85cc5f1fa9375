"""`thinktune ui`: a Gradio web interface over the runs directory (configure, launch, watch, compare, chat).

    thinktune ui --runs-dir runs

runs_view.py reads runs (status, headline, metric series), form.py turns the pydantic config into form fields and
back into `--set` overrides, jobs.py launches and stops CLI runs as subprocesses, paths.py keeps every path the UI
touches inside its roots, app.py lays out the pages.
"""
