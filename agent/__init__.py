"""Slipstream's mesh side: the node agent, the CA, the lab and the command line."""
