"""The order gateway's pure parts: reading bots' order requests, the guard's rules, the refusals."""
