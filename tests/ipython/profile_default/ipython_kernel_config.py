c = get_config()  # noqa: F821 (IPython defines get_config when it loads this file)
c.InteractiveShell.colors = "nocolor"
