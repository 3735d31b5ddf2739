

nope
prod