"""The user guide shown at ``/help``: one markdown file per page, in the order
of ``order.txt`` (see ``bambid.web.helpcenter``). Data only."""
