"""IR → the generated Python server module, `synapse_bridge_<module>.py`.

The module is small on purpose: it imports the user's module, names the
functions it serves, and hands them to `synapse_python.bridge.BridgeService`,
which does the work from the IR and descriptor set generated beside it.
"""

from __future__ import annotations

import textwrap

from synapse_python._bridge._ir import IR, module_stem


def server_module_name(module: str) -> str:
    """The generated server module's name: `synapse_bridge_<module with dots as underscores>`."""
    return f"synapse_bridge_{module_stem(module)}"


def render(ir: IR, *, command: str) -> str:
    module = ir.module
    package, _, alias = module.rpartition(".")
    import_line = f"from {package} import {alias}" if package else f"import {module}"
    entries = "\n".join(
        f'        "{function.name}": {alias}.{function.name},' for function in ir.functions
    )
    stem = module_stem(module)
    doc = "\n\n".join(
        _fill(paragraph)
        for paragraph in (
            f"Synapse Bridge server for the Python module `{module}`. Generated: do not edit;"
            f" regenerate with `{command}`.",
            f"`python -m synapse_python.worker --bridge {module}` serves it as the gRPC service"
            f" `{ir.full_service}`. This file, `{stem}.ir.json` and `{stem}.desc` stay together"
            f" in one directory on PYTHONPATH, and `{module}` must be importable.",
        )
    )
    return f'''"""{doc}
"""

{import_line}
from synapse_python.bridge import BridgeService

SERVICE = BridgeService.load(
    __file__,
    {alias},
    {{
{entries}
    }},
)
'''


def _fill(text: str) -> str:
    return textwrap.fill(text, width=88, break_long_words=False, break_on_hyphens=False)
