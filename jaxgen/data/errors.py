"""DataError: the one exception the data layer raises for bad, missing or corrupt data.

Config mistakes are jaxgen.config.ConfigError instead (they name a config field); a DataError
names the file or dataset at fault, in one line, so that the scripts can print it and exit.
"""


class DataError(ValueError):
    """Bad, missing or corrupt data; the message is one line naming the file or dataset."""

    def __init__(self, message: str):
        # Exception texts from lower layers (TFDS, pip, urllib) often span several lines.
        super().__init__(" ".join(str(message).split()))
