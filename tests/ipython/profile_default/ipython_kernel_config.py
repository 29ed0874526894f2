c.InteractiveShell.colors = 'nocolor'
