"""A stand-in for a company's source systems: a sales database, CRM CSV drops and a service-desk
JSON-lines export, written to the source contract exactly as real systems would deliver them.

The pipeline never imports this package, and this package never imports the pipeline: it reads
the contract file as data.
"""

from simulator.generate import SimulationError, SimulationSettings, append_day, simulate

__all__ = ["SimulationError", "SimulationSettings", "append_day", "simulate"]
