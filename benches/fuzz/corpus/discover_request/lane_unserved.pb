d
	
pay.api
prod