"""Unit surgery: rescale, gate, ungate, grow and re-initialise single units of a layer.

Example:
    >>> import keras, numpy as np, adaptgrad
    >>> model = keras.Sequential([keras.Input((5, 1)), keras.layers.GRU(4, name="gru"),
    ...                           keras.layers.Dense(1)])
    >>> units = adaptgrad.unit_view(model, "gru")
    >>> with units.transaction():  # all or none
    ...     units.gate([1, 2])
    ...     units.ungate([2])
    [1, 2]
    [2]
    >>> units.active.tolist()
    [True, False, True, True]

:func:`unit_view` makes the :class:`UnitView` of one layer (:mod:`.view`: the edits and readings).
Its jobs, one module each:

- :mod:`.incoming`: which weights feed a unit (Keras's conventions, or ``adaptgrad_unit_weights``);
- :mod:`.outgoing`: where a unit's output goes (the next layer's rows, its recurrent row);
- :mod:`.layout`: both, as the index of every unit's slice at every position;
- :mod:`.install`: putting the gate (:mod:`adaptgrad.gates`) on the layer and its config, and off;
- :mod:`.writes`: an edit's reads and assignments, once per variable, optimizer slots
  (:mod:`adaptgrad.slots`) included;
- :mod:`.saved`: the weights gated units had, that ungating restores;
- :mod:`.draws`: seeded fresh weights;
- :mod:`.record`: each unit's age and cumulative gains;
- :mod:`.transaction`: the undo log that makes a rule's edits all or none;
- :mod:`.checks`: what an edit checks before it changes anything.

A resumed run gets the view's state from :meth:`UnitView.get_state`, which gathers each part's.
"""

from adaptgrad.units.incoming import incoming_weights, weight_owner
from adaptgrad.units.outgoing import consumer_chain, input_kernels, unit_rows
from adaptgrad.units.view import Edit, UnitView, unit_view

__all__ = ["Edit", "UnitView", "consumer_chain", "incoming_weights", "input_kernels", "unit_rows", "unit_view", "weight_owner"]
