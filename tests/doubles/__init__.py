"""Look-alikes of OpenAlgo's parts, written from /work/shared/OPENALGO.md (its code is not used)."""
