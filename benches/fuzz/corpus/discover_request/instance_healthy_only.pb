
	
pay.api
prodò