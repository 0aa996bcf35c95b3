"""The built-in macvlan plugin's work: :mod:`.dump`, :mod:`.restore` and :mod:`.announcing`.

:class:`criu_macvlan.plugin.MacvlanPlugin` is the plugin (its hooks call these
modules); :mod:`.session` is what its hooks share within one RPC session.
"""
