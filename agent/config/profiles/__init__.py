"""Device profiles: the store that loads them and the board detection that picks one."""
