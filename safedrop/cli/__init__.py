"""The command line: its flags and dispatch (main), the commands behind them, and `safedrop demo`.
The one part of safedrop allowed to import flows/ (and through them tasks/); anything else too.
Nothing in safedrop imports cli/."""
