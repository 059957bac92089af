"""The plugin: the functions of wit/world.wit, written in Python.

Build it with ``python build.py`` (componentize-py turns this module, the Python interpreter and
the WIT world into one WebAssembly component, plugsafe_template.wasm); test it with
``python -m pytest`` (test_plugin.py).

componentize-py generates the ``wit_world`` package from the WIT at build time (to see it, run
``componentize-py -d wit -w plugsafe-template bindings bindings``). The world's exported
functions are the methods of a class named ``WitWorld``. A function whose WIT result is
``result<T, E>`` returns ``T``, or raises ``Err(E)``: the app sees a ``plugsafe.GuestError``
whose ``value`` is ``E``. Any other exception is a trap (``plugsafe.PluginTrap`` on the host).
"""

import wit_world
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def shout(self, text: str) -> str:
        if not text:
            raise Err("nothing to shout")
        return text.upper()
