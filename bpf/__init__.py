"""The capture programs (`capture_*.c`) and `mesh.h`, shipped as package data.

Nothing here runs: the node agent's datapath loader (agent/node/datapath/loader.py)
finds these files through `importlib.resources` and compiles them with bcc at
start, in a checkout and in an installed copy (`pip install .`) alike. `mesh.h`
is the one definition of what C and Python share; its one Python mirror,
agent/node/datapath/abi.py, is checked against the compiled programs at load.
"""
