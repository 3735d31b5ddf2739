
	
pay.api
prod