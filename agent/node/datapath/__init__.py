"""The datapath: eBPF capture programs, loaded once, attached inside each enrolled pod."""
