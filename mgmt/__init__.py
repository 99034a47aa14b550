"""pyglfsd and the pyglfs CLI: peers, volumes, volfiles, brick supervision."""
