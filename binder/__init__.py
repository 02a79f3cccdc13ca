"""streambinder: declare functions, bind them to destinations, run on any backend."""
