"""``python -m launcher.sim [OPTIONS]`` runs the sim server in the foreground."""

from launcher.sim.server import main

main()
