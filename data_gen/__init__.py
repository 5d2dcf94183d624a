"""data_gen stage."""
