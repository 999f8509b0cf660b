"""Twisted plugin package for trigger actions (``IActionFactory``, see
``bambid.triggers.actions``).

Besides the modules here, Twisted's plugin system reads every module in a
``bambid/plugins/`` directory (without ``__init__.py``) found on ``sys.path``:
that is where an operator's own action plugins go. Each such module holds
objects providing ``twisted.plugin.IPlugin`` and ``IActionFactory``.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
