"""`python -m seglab.report PATH`."""

from seglab.report import main

main()
