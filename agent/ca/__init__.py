"""The mesh CA: keeps the roots, authorizes nodes, signs workload certificates."""
