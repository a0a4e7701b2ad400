"""matplotlib for kcl's figures: imported on first use, drawing to files (the Agg backend)."""


def pyplot():
    """`matplotlib.pyplot` with the Agg backend; a one-line `ImportError` naming the extra when matplotlib is missing.

    Example:

    >>> plt = pyplot()
    >>> figure, axis = plt.subplots()
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Plots need matplotlib: pip install 'kcl[plots]'") from error
    return plt
