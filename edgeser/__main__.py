"""`python -m edgeser ...`, as the `edgeser` command; under torchrun: `torchrun --nproc_per_node=N -m edgeser compress ...`."""
from edgeser.cli import main

if __name__ == "__main__":
    main()
