"""USB GSM/LTE modems (AT commands, PDU mode).

* ``at``        -- the transport: one reader thread per port, URC table, wall-clock deadlines.
* ``driver``    -- ``ModemDriver``: one state machine per modem on its own thread; the app
                   talks to it through ``send()`` and the callbacks it was built with.
* ``reports``   -- matching delivery reports to sent parts (MR + number + time window).
* ``inbound``   -- read-but-not-yet-deleted inbound SMS: reassembly and commit claims.
* ``scan``      -- finding the AT port (``/dev/serial/by-id``) and probing it with ``ATI``.
* ``simulator`` -- a scriptable PDU-mode modem on a pty, for tests and ``relaybox modem
                   simulate``.
* ``channel``   -- the Channel that wires a driver to the message table (and ``init_app``).
* ``models``    -- modems added through the API; inbound SMS already stored.
* ``manage``    -- ``/api/v1/modems``: list, add, change, remove, USSD, reset, scan.
* ``cli``       -- ``relaybox modem scan | simulate | ussd``.
"""
