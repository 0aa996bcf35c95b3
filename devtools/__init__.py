"""Support code for a criu-macvlan checkout (tests, benchmarks, the demo); not part of the installed package."""
