"""The `dutycycle` command:

    dutycycle demo [options]              train the demo GPT on a word list (dutycycle.demo)
    dutycycle run -n N [opts] script.py   run a script on N ranks under mpirun (dutycycle.distributed.launch)
    dutycycle simulate [options]          the scaling model (dutycycle.simulate)
    dutycycle ckpt inspect PATH           a checkpoint's steps, sizes, tensors, verification
    dutycycle ckpt consolidate PATH OUT   one safetensors file from a checkpoint
    dutycycle shard write|index ...       WebDataset shards from a folder; their sample-count index

Each subcommand's module is imported only when it runs."""

import sys

USAGE = """usage: dutycycle demo [options]                 train the demo GPT on a word list and print new words
       dutycycle run -n N [options] script.py   run a training script on N ranks (under Open MPI's mpirun)
       dutycycle simulate [options]             model data-parallel scaling (parameter server, ring, tree, ZeRO)
       dutycycle ckpt inspect PATH              a checkpoint's steps, sizes, tensors and CRC32C verification
       dutycycle ckpt consolidate PATH OUT      write a checkpoint as one .safetensors file (safetensors/PyTorch)
       dutycycle shard write SRC_DIR PATTERN    WebDataset shards (+ index) from a folder of files
       dutycycle shard index URLS... [-o OUT]   count existing shards' samples into an index
       dutycycle COMMAND --help                 a command's options"""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if cmd == "run":
        from .distributed.launch import main as run_main

        return run_main(rest)
    if cmd == "simulate":
        from .simulate import main as simulate_main

        return simulate_main(rest)
    if cmd == "ckpt":
        from .checkpoint._cli import main as ckpt_main

        return ckpt_main(rest)
    if cmd == "shard":
        from .data._shard_cli import main as shard_main

        return shard_main(rest)
    print(f"dutycycle: unknown command {cmd!r} (try 'dutycycle --help')", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
