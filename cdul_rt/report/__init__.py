"""``cdul-rt report``: one static, self-contained HTML page to review a label file before trusting it.

``data`` turns a label file (+ optional ground truth) into the page's JSON blob, ``thumbs`` makes the thumbnails,
``plots`` draws the matplotlib figures, ``render`` fills the Jinja2 template. The page needs no server and loads
nothing from the network: filtering, sorting and paging run in its own script over the embedded blob.
"""
