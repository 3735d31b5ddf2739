
	
pay.api
prod