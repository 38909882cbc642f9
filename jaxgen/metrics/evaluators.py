"""EVALUATORS: the registry of evaluators that config.evals entries name by `type`.

Its own module so that the evaluators (generative.py) register themselves without importing the
package that runs them (metrics/__init__.py); see that docstring for the evaluator interface.
"""

from jaxgen.registry import Registry

EVALUATORS = Registry("evaluator", "config.evals.<name>.type")
