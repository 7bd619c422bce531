"""Reports: the paper's numbers and tables that put ours beside them."""
