"""``python -m fdistill.cli`` (and ``accelerate launch -m fdistill.cli``): the `fdistill` command."""

from fdistill.cli import main

main()
