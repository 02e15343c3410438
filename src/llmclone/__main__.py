from llmclone.cli import main

main()
