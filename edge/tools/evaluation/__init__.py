"""``edge-lfr eval``: accuracy of the on-device pipeline on labelled faces.

    lfw             reading an LFW-layout folder and its pairs file
    embeddings      every image embedded once by the unit's own pipeline (cached)
    dlib_reference  dlib's float pipeline, the reference measured in the same run
    protocol        pair verification, open-set identification, tracks, enrolment (pure numpy)
    plots           DET curves and the summary table
    command         the command that runs them and writes the report

The constants below are the protocol's choices, kept here (no numpy) so the command line can
offer them without loading the evaluation.
"""

#: target false-positive identification rates the report states FNIR at
FPIR_TARGETS = (0.01, 0.001)
#: open-set watchlist sizes (sampled with --seed; "all": every identity with two or more images)
WATCHLIST_SIZES = (100, 500, "all")
#: points drawn on each DET curve
DET_POINTS = 300
#: images without a usable face listed by name in the report
NO_FACE_EXAMPLES = 10
#: images fused into one probe by the track protocol (--track-size)
TRACK_SIZES = (1, 3, 5)
#: scoring pipelines compared (--pipeline)
PIPELINES = ("base", "improved", "both")
