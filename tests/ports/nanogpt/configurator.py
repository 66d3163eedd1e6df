# Overrides the training script's globals from the command line, the way nanoGPT's configurator
# does: `python train.py config/x.py --batch_size=32 --compile=False`. A bare argument is a Python
# file executed in the script's namespace; --key=value replaces an existing global, with the value
# parsed as a Python literal when it is one (else kept as a string) and of the global's type.
# Run with exec(open('configurator.py').read()) from the training script.
import sys
from ast import literal_eval

for _arg in sys.argv[1:]:
    if not _arg.startswith("--"):
        print(f"Overriding config with {_arg}:")
        with open(_arg) as _f:
            exec(_f.read())
        continue
    _key, _sep, _val = _arg[2:].partition("=")
    if not _sep:
        raise ValueError(f"configurator: expected --key=value, got {_arg!r}")
    if _key not in globals():
        raise ValueError(f"configurator: unknown config key: {_key}")
    try:
        _parsed = literal_eval(_val)
    except (SyntaxError, ValueError):
        _parsed = _val
    if type(_parsed) is not type(globals()[_key]):
        raise TypeError(f"configurator: --{_key}={_val!r} is a {type(_parsed).__name__}, expected "
                        f"{type(globals()[_key]).__name__}")
    print(f"Overriding: {_key} = {_parsed}")
    globals()[_key] = _parsed
