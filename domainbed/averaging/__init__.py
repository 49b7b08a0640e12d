"""Weight averaging, one module each (docs/averaging.md):

    averaged_model.py   AveragedModel, the running uniform average every averager is built from
    loss_valley.py      LossValley, SWAD's dense averaging over the validation-loss valley
    iid_max.py          IIDMax, SWAD's average from the checkpoint of best validation accuracy
    sma.py              SMA, EoA's simple moving average, kept at its best validation accuracy
    batchnorm.py        whether and how an average's BatchNorm statistics are re-estimated
    diwa.py             DiWA's uniform and greedy averages of several runs' weights (domainbed/scripts/diwa.py)
    extension.py        the trainer extension behind --swad

A strategy receives, at every checkpoint, the segment average of the steps since the last one
with the training-domain validation accuracy and loss measured there,

    strategy.update_and_evaluate(segment_model, val_acc, val_loss)

and after training `strategy.get_final_model()` is the averaged model; `dead_valley` tells the
trainer to stop (only LossValley sets it). This is the contract of SWAD's `domainbed/swad.py`.
"""
