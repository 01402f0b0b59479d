"""Recording without transcoding: the node's side (``manager``), the recorder process
(``process``, ``writer``) and what they say to each other (``wire``)."""
