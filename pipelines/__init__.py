"""Thin DVC stage entry points: parse, load config, call one library function, write outputs."""
