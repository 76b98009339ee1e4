"""Entry point kept from the original script: ``python main.py --subset_name imagenet30 --data_dir ...``."""
import sys

from packer.cli import main

if __name__ == "__main__":
    sys.exit(main())
