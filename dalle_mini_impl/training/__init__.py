"""Everything that trains: the training commands and the loops behind them.

No model module imports this package; it imports the model modules (layers: ``datasets`` and
``utils`` -> the lesson modules -> ``training`` -> the command line and the notebooks).
"""
