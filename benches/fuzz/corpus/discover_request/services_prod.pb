
prodz
x