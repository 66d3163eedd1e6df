"""The `dutycycle` command: `dutycycle demo [options]` runs the main job (see dutycycle.demo)."""

import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: dutycycle demo [options]   train the demo GPT on a word list and print new words\n"
              "       dutycycle demo --help      the demo's options")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    print(f"dutycycle: unknown command {cmd!r} (try 'dutycycle --help')", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
