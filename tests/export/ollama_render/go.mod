module ollamarender

go 1.22
