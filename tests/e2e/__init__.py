"""As a person reaches it: the README's demo, the installed wheel, the browser."""
