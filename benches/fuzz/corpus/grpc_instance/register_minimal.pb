	
default
echo"

10.0.0.1*ê?