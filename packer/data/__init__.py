"""Tables the package ships: see README.md in this folder."""
