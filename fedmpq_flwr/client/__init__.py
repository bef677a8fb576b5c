"""Client-side parts below a method's client: the guard every client runs in, and client failures."""
