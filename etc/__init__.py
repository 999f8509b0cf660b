"""Example configuration and default data files, installed as bambid.etc."""
